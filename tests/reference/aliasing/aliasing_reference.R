# Reference values for aliasing: a covariate constant among one feature's participants.
#
# R's lm() keeps such a covariate column in the model matrix, gives it an NA
# coefficient (aliased) and still estimates the exposure, with the residual
# degrees of freedom n - rank. The batch dummies are numeric columns here (as
# the design holds them), so a dummy that is all zero among a feature's
# non-missing rows is aliased rather than refused.
#
# Run from this folder:  Rscript aliasing_reference.R
# Writes aliasing_data.tsv (the data) and aliasing_reference.tsv (exposure rows).
set.seed(20261205)
n <- 80
batch <- sample(c("A", "B", "C"), n, replace = TRUE)
age <- round(rnorm(n, 50, 10), 1)
exposure <- rbinom(n, 1, 0.4)
batchB <- as.numeric(batch == "B")
batchC <- as.numeric(batch == "C")
feature <- function() round(5 + 0.4 * exposure + 0.02 * age + 0.3 * batchB + rnorm(n), 6)
data <- data.frame(sample_id = sprintf("S%03d", seq_len(n)), batch = batch, age = age, exposure = exposure)
y <- list(
  only_A = ifelse(batch == "A", feature(), NA),                 # both batch dummies aliased
  no_C = ifelse(batch != "C", feature(), NA),                   # batchC aliased
  few_missing = ifelse(runif(n) < 0.1, NA, feature()),          # nothing aliased
  unexposed_only = ifelse(exposure == 0, feature(), NA),        # the exposure itself is constant: not estimable
  complete = feature()
)
for (name in names(y)) data[[name]] <- y[[name]]
write.table(data, "aliasing_data.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "NA")

rows <- list()
for (name in names(y)) {
  fit <- lm(data[[name]] ~ exposure + age + batchB + batchC)
  coefs <- coef(summary(fit))
  estimable <- !is.na(coef(fit)["exposure"])
  rows[[name]] <- data.frame(
    feature = name,
    n = length(fit$residuals),
    df = fit$df.residual,
    rank = fit$rank,
    beta = if (estimable) coefs["exposure", "Estimate"] else NA,
    se = if (estimable) coefs["exposure", "Std. Error"] else NA,
    t = if (estimable) coefs["exposure", "t value"] else NA,
    p = if (estimable) coefs["exposure", "Pr(>|t|)"] else NA
  )
}
out <- do.call(rbind, rows)
out[] <- lapply(out, function(column) if (is.numeric(column)) sprintf("%.17g", column) else column)
write.table(out, "aliasing_reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
