# Reference values for cluster-robust OLS (CR1) with t(G - 1) p-values, one feature at a time.
# Run from this folder:  Rscript cluster_reference.R
#   (Debian packages r-base-core, r-cran-sandwich, r-cran-lmtest)
# Writes cluster_data.tsv (the data: 6 projects of unequal size, a covariate and some
# features with missing values) and cluster_reference.tsv: per exposure and feature the
# exposure's estimate, its cluster-robust se from sandwich::vcovCL(type = "HC1")
# (G/(G-1) (n-1)/(n-k), the CR1 of Stata and statsmodels), t = estimate / se, p from
# lmtest::coeftest with df = G - 1 (Stata's reference distribution) and p_normal with
# df = Inf (statsmodels' cov_type = "cluster"), n and G, the projects among the rows used.
# lm's na.action = na.omit drops a row with a missing covariate from every model and a
# missing feature value from that feature's model; vcovCL then uses the clusters of the
# rows used (feature4 has no value in one whole project, so G = 5 there).
library(sandwich)
library(lmtest)
set.seed(1806)
n <- 150
projects <- c("kurokawa07", "smith12", "jones15", "lee18", "garcia20", "ito21")
project <- sample(projects, n, replace = TRUE, prob = c(0.30, 0.22, 0.18, 0.13, 0.10, 0.07))
# Exposure prevalence differs between projects: the exposure is clustered, so robust and
# classical standard errors differ.
case_rate <- c(kurokawa07 = 0.55, smith12 = 0.15, jones15 = 0.40, lee18 = 0.25, garcia20 = 0.60, ito21 = 0.30)
data <- data.frame(
  sample_id = sprintf("S%03d", seq_len(n)),
  project = project,
  case = rbinom(n, 1, case_rate[project]),
  score = round(rnorm(n, 0, 1) + match(project, projects) / 3, 3),
  age = round(rnorm(n, 50, 12), 1),
  sex = sample(c("female", "male"), n, replace = TRUE),
  bmi = round(rnorm(n, 26, 4), 2)
)
data$bmi[sample(n, 7)] <- NA
project_effect <- matrix(rnorm(length(projects) * 6, sd = 1.2), nrow = length(projects), dimnames = list(projects, NULL))
for (j in 1:6) {
  y <- 6 + 0.5 * data$case * (j %% 2) + 0.2 * data$score + 0.02 * data$age +
    ifelse(data$sex == "male", 0.4, 0) + project_effect[data$project, j] + rnorm(n, sd = 0.5 + j / 4)
  if (j == 3) y[sample(n, 25)] <- NA                   # scattered missing values
  if (j == 4) y[data$project == "ito21"] <- NA         # a whole project without a value: G = 5
  if (j == 5) y <- y + 1000                            # a large mean: the intercept absorbs it
  if (j == 6) y[data$project == "lee18" & runif(n) < 0.5] <- NA  # missing values within one project
  data[[sprintf("feature%d", j)]] <- round(y, 6)
}
write.table(data, "cluster_data.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "", dec = ".")
# Re-read exactly what the tests will read, so both sides start from the same numbers.
data <- read.delim("cluster_data.tsv", na.strings = "")
data$sex <- factor(data$sex)  # treatment coding, reference = first level in sorted order
rows <- list()
for (exposure in c("case", "score")) {
  for (feature in sprintf("feature%d", 1:6)) {
    fit <- lm(as.formula(paste(feature, "~", exposure, "+ age + sex + bmi")), data = data, na.action = na.omit)
    used <- data[as.integer(rownames(model.frame(fit))), ]
    G <- length(unique(used$project))
    V <- vcovCL(fit, cluster = ~project, type = "HC1")
    robust <- coeftest(fit, vcov. = V, df = G - 1)
    normal <- coeftest(fit, vcov. = V, df = Inf)
    classical <- summary(fit)$coefficients
    rows[[length(rows) + 1]] <- data.frame(
      exposure = exposure, feature = feature,
      beta = robust[exposure, 1], se = robust[exposure, 2], t = robust[exposure, 3], p = robust[exposure, 4],
      p_normal = normal[exposure, 4], se_classical = classical[exposure, 2], p_classical = classical[exposure, 4],
      n = nobs(fit), G = G
    )
  }
}
rows <- do.call(rbind, rows)
write.table(format(rows, digits = 17), "cluster_reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
cat(R.version.string, "\n")
