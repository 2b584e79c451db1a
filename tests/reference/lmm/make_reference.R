# Reference values for the random-intercept linear mixed model, from lme4::lmer (REML).
# Run from this folder:  Rscript make_reference.R
# (Debian packages r-base-core, r-cran-lme4, r-cran-lmertest.)
#
# Writes lmm_data.tsv (the data) and lmm_reference.tsv: for each feature, the
# exposure's estimate and standard error, the REML variance components
# sigma_u^2 (family) and sigma_e^2 (residual) and n, from
#   lmer(feature ~ case + age + site + sex + (1 | family_id), REML = TRUE)
# with na.action = na.omit: a participant with a missing covariate leaves every
# model, a missing feature value leaves that feature's model only.
# lmerTest's Satterthwaite df and p-value are written too, for information.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
})
set.seed(20240607)

# ~150 families of 1-5 members, 400 participants in all.
family_sizes <- integer(0)
while (sum(family_sizes) < 400) family_sizes <- c(family_sizes, sample(1:5, 1, prob = c(0.25, 0.25, 0.2, 0.15, 0.15)))
family_sizes[length(family_sizes)] <- family_sizes[length(family_sizes)] - (sum(family_sizes) - 400)
family_sizes <- family_sizes[family_sizes > 0]
n <- sum(family_sizes)
family <- rep(seq_along(family_sizes), family_sizes)
# Shuffle rows so families are not contiguous (the kernel must not rely on sorting).
order <- sample(n)
family <- family[order]
data <- data.frame(
  sample_id = sprintf("S%03d", seq_len(n)),
  family_id = sprintf("F%03d", family),
  case = rbinom(n, 1, 0.35),
  age = round(rnorm(n, 45, 14), 1),
  site = sample(c("north", "east", "south"), n, replace = TRUE),
  sex = sample(c("f", "m"), n, replace = TRUE)
)
data$age[sample(n, 9)] <- NA
n_families <- length(family_sizes)
# Family variance shares: 0 (a negative within-family correlation, so REML is at the
# boundary sigma_u^2 = 0), then increasing; feature6 also has missing values.
shares <- c(0, 0.1, 0.3, 0.6, 0.9, 0.4)
for (j in 1:6) {
  noise <- rnorm(n)
  if (j == 1) noise <- noise - 0.6 * ave(noise, family)  # shrink toward the family mean: ICC < 0
  u <- rnorm(n_families, sd = sqrt(shares[j] / (1 - shares[j] + 1e-12)))
  y <- 0.3 * data$case * (j %% 2) + 0.015 * data$age + ifelse(data$site == "east", 0.4, 0) +
       ifelse(data$sex == "m", -0.2, 0) + (if (shares[j] > 0) u[family] else 0) + noise * j / 2
  if (j == 6) y[sample(n, 45)] <- NA
  if (j == 5) y <- y + 500  # a large mean: the intercept must absorb it without loss
  data[[sprintf("feature%d", j)]] <- y
}
write.table(data, "lmm_data.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "", dec = ".")

# Re-read exactly what the tests will read, so both sides start from the same numbers.
data <- read.delim("lmm_data.tsv", na.strings = "")
data$site <- factor(data$site)  # treatment coding, reference = first level in sorted order
data$sex <- factor(data$sex)
# Tight optimiser tolerances: these are reference values, so the REML optimum must be
# located far more precisely than lme4's defaults need for everyday use.
control <- lmerControl(optimizer = "nloptwrap", optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-15, xtol_rel = 1e-12, maxeval = 1e5),
                       calc.derivs = FALSE)
rows <- do.call(rbind, lapply(sprintf("feature%d", 1:6), function(feature) {
  formula <- as.formula(paste(feature, "~ case + age + site + sex + (1 | family_id)"))
  fit <- lmer(formula, data = data, REML = TRUE, na.action = na.omit, control = control)
  coefficients <- summary(fit)$coefficients
  components <- as.data.frame(VarCorr(fit))
  satterthwaite <- summary(as_lmerModLmerTest(fit), ddf = "Satterthwaite")$coefficients
  data.frame(
    feature = feature,
    beta = coefficients["case", "Estimate"],
    se = coefficients["case", "Std. Error"],
    sigma_u2 = components$vcov[components$grp == "family_id"],
    sigma_e2 = components$vcov[components$grp == "Residual"],
    n = nobs(fit),
    n_families = ngrps(fit)[["family_id"]],
    reml_deviance = REMLcrit(fit),
    df_satterthwaite = satterthwaite["case", "df"],
    p_satterthwaite = satterthwaite["case", "Pr(>|t|)"]
  )
}))
write.table(format(rows, digits = 17), "lmm_reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
cat(R.version.string, "; lme4", format(packageVersion("lme4")), "; lmerTest", format(packageVersion("lmerTest")), "\n")
