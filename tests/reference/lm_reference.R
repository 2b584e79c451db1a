# Reference values for per-feature OLS from R's lm(), one feature at a time.
# Run from this folder:  Rscript lm_reference.R   (Debian package r-base-core)
# Writes lm_data.tsv (the data) and lm_reference.tsv (estimate, se, t, p, n of the
# exposure for each feature), na.action = na.omit: a participant with a missing
# covariate leaves every model, a missing feature value leaves that feature's model.
set.seed(7656)
n <- 240
data <- data.frame(
  sample_id = sprintf("S%03d", seq_len(n)),
  case = rbinom(n, 1, 0.3),
  age = round(rnorm(n, 50, 12), 1),
  site = sample(c("north", "east", "south"), n, replace = TRUE),
  bmi = round(rnorm(n, 26, 4), 2)
)
data$bmi[sample(n, 12)] <- NA
for (j in 1:6) {
  y <- 0.4 * data$case * (j %% 2) + 0.02 * data$age + ifelse(data$site == "east", 0.5, 0) + rnorm(n, sd = j)
  if (j == 3) y[sample(n, 30)] <- NA
  if (j == 5) y <- y + 1000  # a large mean: the intercept must absorb it without loss
  data[[sprintf("feature%d", j)]] <- y
}
write.table(data, "lm_data.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "", dec = ".")
# Re-read exactly what the tests will read, so both sides start from the same numbers.
data <- read.delim("lm_data.tsv", na.strings = "")
data$site <- factor(data$site)  # treatment coding, reference = first level in sorted order
rows <- do.call(rbind, lapply(sprintf("feature%d", 1:6), function(feature) {
  fit <- lm(as.formula(paste(feature, "~ case + age + site + bmi")), data = data, na.action = na.omit)
  coefficients <- summary(fit)$coefficients
  data.frame(feature = feature, beta = coefficients["case", 1], se = coefficients["case", 2],
             t = coefficients["case", 3], p = coefficients["case", 4], n = nobs(fit))
}))
write.table(format(rows, digits = 17), "lm_reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
cat(R.version.string, "\n")
