# Reference values for a categorical covariate with a chosen reference level (plan key
# covariates.reference), from R's lm() with relevel().
# Run from this folder:  Rscript make_reference.R   (Debian package r-base-core)
# Writes metadata.tsv (participants), features.tsv (a wide layer: samples as rows) and
# reference.tsv: per feature, every coefficient of
#   feature ~ case + age + relevel(factor(sex), ref = "male") + relevel(factor(site), ref = "b")
# with its estimate, se, t and p. The references are not the first level in sorted order
# ('female', 'a'), so the dummies are sexfemale, sitea and sitec.
set.seed(18)
n <- 200
metadata <- data.frame(
  sample_id = sprintf("P%03d", seq_len(n)),
  case = rbinom(n, 1, 0.35),
  age = round(rnorm(n, 45, 10), 1),
  sex = sample(c("female", "male"), n, replace = TRUE),
  site = sample(c("a", "b", "c"), n, replace = TRUE, prob = c(0.3, 0.4, 0.3))
)
features <- data.frame(sample_id = metadata$sample_id)
for (j in 1:4) {
  y <- 10 + 0.5 * metadata$case * (j %% 2) + 0.03 * metadata$age +
    ifelse(metadata$sex == "female", 0.4, 0) + ifelse(metadata$site == "c", -0.6, ifelse(metadata$site == "a", 0.3, 0)) +
    rnorm(n, sd = 0.5 * j)
  features[[sprintf("feature%d", j)]] <- y
}
write.table(metadata, "metadata.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
write.table(features, "features.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
# Re-read exactly what the tests will read, so both sides start from the same numbers.
metadata <- read.delim("metadata.tsv")
features <- read.delim("features.tsv")
data <- merge(metadata, features, by = "sample_id")
data$sex <- relevel(factor(data$sex), ref = "male")
data$site <- relevel(factor(data$site), ref = "b")
rows <- do.call(rbind, lapply(sprintf("feature%d", 1:4), function(feature) {
  fit <- lm(as.formula(paste(feature, "~ case + age + sex + site")), data = data)
  coefficients <- summary(fit)$coefficients
  data.frame(feature = feature, term = rownames(coefficients), estimate = coefficients[, 1], se = coefficients[, 2],
             t = coefficients[, 3], p = coefficients[, 4], n = nobs(fit))
}))
write.table(format(rows, digits = 17), "reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
cat(R.version.string, "\n")
