# Reference values for a multi-level categorical exposure tested jointly, from R's lm().
# Run from this folder:  Rscript categorical_reference.R   (Debian package r-base-core)
# Writes categorical_data.tsv (the data: metadata and features, positive values, a few NA)
# and categorical_reference.tsv, per feature:
#   * term "seqtech[<level>]": the level dummy's coefficient in
#     feature ~ seqtech + age + sex + bmi (reference level "Sanger"), summary(lm) estimate, se, t, p;
#   * term "age", "sex[male]", "bmi": every covariate's coefficient in the same model;
#   * term "seqtech" (the omnibus row): anova(reduced, full) with reduced = feature ~ age + sex + bmi,
#     F = ((RSS_reduced - RSS_full) / (L - 1)) / (RSS_full / (n - rank)) and its p, in columns F and p.
# na.action = na.omit: a participant with a missing covariate leaves every model, a missing
# feature value leaves that feature's models only (both fits of anova() use the same rows).
set.seed(18)
n <- 90
data <- data.frame(
  sample_id = sprintf("P%03d", seq_len(n)),
  seqtech = sample(c("Illumina", "Sanger", "Nanopore", "PacBio"), n, replace = TRUE, prob = c(0.4, 0.25, 0.2, 0.15)),
  age = round(rnorm(n, 50, 12), 1),
  sex = sample(c("female", "male"), n, replace = TRUE),
  bmi = round(rnorm(n, 26, 4), 2)
)
data$bmi[sample(n, 4)] <- NA
shift <- c(Illumina = 0, Sanger = 0.6, Nanopore = -0.4, PacBio = 0.2)
for (j in 1:6) {
  y <- 5 + shift[data$seqtech] * (j %% 3 != 0) + 0.01 * data$age + ifelse(data$sex == "male", 0.3, 0) + rnorm(n, sd = 0.3 * j)
  y <- exp(y / 3)  # positive, as abundances are
  if (j %in% c(2, 4)) y[sample(n, 5)] <- NA
  if (j == 6) y[sample(n, 35)] <- NA
  data[[sprintf("feature%d", j)]] <- unname(y)
}
write.table(data, "categorical_data.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "", dec = ".")
# Re-read exactly what the tests will read, so both sides start from the same numbers.
data <- read.delim("categorical_data.tsv", na.strings = "")
data$seqtech <- relevel(factor(data$seqtech), ref = "Sanger")
data$sex <- factor(data$sex)  # treatment coding, reference = first level in sorted order
rows <- do.call(rbind, lapply(sprintf("feature%d", 1:6), function(feature) {
  used <- data[complete.cases(data[, c(feature, "seqtech", "age", "sex", "bmi")]), ]
  full <- lm(as.formula(paste(feature, "~ seqtech + age + sex + bmi")), data = used)
  reduced <- lm(as.formula(paste(feature, "~ age + sex + bmi")), data = used)
  omnibus <- anova(reduced, full)
  coefficients <- summary(full)$coefficients[-1, , drop = FALSE]
  terms <- sub("^seqtech(.*)$", "seqtech[\\1]", sub("^sex(.*)$", "sex[\\1]", rownames(coefficients)))
  rbind(
    data.frame(feature = feature, term = terms, beta = coefficients[, 1], se = coefficients[, 2],
               t = coefficients[, 3], p = coefficients[, 4], F = NA, df = full$df.residual, n = nobs(full)),
    data.frame(feature = feature, term = "seqtech", beta = NA, se = NA, t = NA, p = omnibus[2, "Pr(>F)"],
               F = omnibus[2, "F"], df = full$df.residual, n = nobs(full))
  )
}))
write.table(format(rows, digits = 17), "categorical_reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "NA")
cat(R.version.string, "\n")
