# Reference values for tests/test_permanova.py and tests/test_diversity.py, from R's vegan.
#
# Regenerate (from the repository root; needs R with vegan >= 2.6, e.g. apt r-cran-vegan):
#   Rscript tests/reference/permanova/make_reference.R
# Writes, next to this script:
#   data_n60.csv, data_n150.csv   inputs: sample, cov1 (numeric), cov2 (factor a/b/c), exp_bin (0/1),
#                                 exp_num (numeric), f01..f30 (counts, many zeros)
#   alpha_n60.csv, alpha_n150.csv vegan diversity(x, "shannon"), diversity(x, "simpson"),
#                                 specnumber(x) (threshold 0) and specnumber(x > 5) (threshold 5)
#   adonis2.csv                   adonis2(D ~ cov1 + cov2 + exposure, data, by = "margin",
#                                 permutations = 999), and (exposure "cov2", a 3-level factor, 2 df)
#                                 adonis2(D ~ cov1 + exp_num + cov2, ...): the exposure row (Df, SumOfSqs, R2, F, Pr(>F)),
#                                 the residual Df/SS and the total SS, for D = vegdist(x, "bray") and
#                                 D = dist(clr) ("aitchison": clr = log(x + c) - row mean of logs,
#                                 c = half the smallest non-zero value of the whole matrix).
# All numbers are written with 17 significant digits.
# Tolerances used by the tests: alpha metrics 1e-12 relative; SS, R2, F 1e-8 relative; p-values
# within Monte Carlo error of two independent 999-permutation tests (see tests/test_permanova.py).
suppressPackageStartupMessages(library(vegan))
here <- local({
  args <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", args[grep("^--file=", args)])
  if (length(f)) dirname(normalizePath(f)) else "."
})
fmt <- function(df) {
  for (j in seq_along(df)) if (is.double(df[[j]])) df[[j]] <- trimws(formatC(df[[j]], digits = 17, format = "g"))
  df
}
make_data <- function(n, seed) {
  set.seed(seed)
  cov1 <- round(rnorm(n, 50, 10), 1)
  cov2 <- factor(sample(c("a", "b", "c"), n, replace = TRUE))
  exp_bin <- rbinom(n, 1, 0.4)
  exp_num <- round(rnorm(n) + 0.02 * cov1, 3)
  p <- 30
  mu <- exp(rnorm(p, 3, 1.2))
  x <- matrix(0, n, p)
  for (j in seq_len(p)) {
    eff <- exp(0.4 * exp_bin * (j %% 3 == 0) + 0.2 * exp_num * (j %% 4 == 0) + 0.3 * (cov2 == "b") * (j %% 5 == 0))
    x[, j] <- rnbinom(n, size = 0.7, mu = mu[j] * eff)
  }
  x[x[, 1] == 0 & x[, 2] == 0, 3] <- x[x[, 1] == 0 & x[, 2] == 0, 3] + 1  # no all-zero sample
  x[rowSums(x) == 0, 4] <- 1
  colnames(x) <- sprintf("f%02d", seq_len(p))
  data.frame(sample = sprintf("s%03d", seq_len(n)), cov1, cov2, exp_bin, exp_num, x, stringsAsFactors = FALSE)
}
clr <- function(x) {
  c0 <- min(x[x > 0]) / 2
  l <- log(x + c0)
  l - rowMeans(l)
}
rows <- list()
for (n in c(60, 150)) {
  d <- make_data(n, 1000 + n)
  write.csv(fmt(d), file.path(here, sprintf("data_n%d.csv", n)), row.names = FALSE, quote = FALSE)
  d <- read.csv(file.path(here, sprintf("data_n%d.csv", n)))  # use exactly what was written
  d$cov2 <- factor(d$cov2)
  x <- as.matrix(d[, grep("^f", names(d))])
  alpha <- data.frame(sample = d$sample, shannon = diversity(x, "shannon"), simpson = diversity(x, "simpson"),
                      richness_0 = specnumber(x), richness_5 = specnumber(x > 5))
  write.csv(fmt(alpha), file.path(here, sprintf("alpha_n%d.csv", n)), row.names = FALSE, quote = FALSE)
  dists <- list(bray = vegdist(x, "bray"), aitchison = dist(clr(x)))
  for (distance in names(dists)) {
    D <- dists[[distance]]
    for (exposure in c("exp_bin", "exp_num", "cov2")) {
      set.seed(42)
      covariates <- if (exposure == "cov2") "cov1 + exp_num" else "cov1 + cov2"
      f <- as.formula(sprintf("D ~ %s + %s", covariates, exposure))
      a <- adonis2(f, data = d, by = "margin", permutations = 999)
      rows[[length(rows) + 1]] <- data.frame(
        n = n, distance = distance, exposure = exposure, df = a[exposure, "Df"], ss = a[exposure, "SumOfSqs"],
        r2 = a[exposure, "R2"], f = a[exposure, "F"], p = a[exposure, "Pr(>F)"], df_residual = a["Residual", "Df"],
        ss_residual = a["Residual", "SumOfSqs"], ss_total = a["Total", "SumOfSqs"], permutations = 999)
    }
  }
}
write.csv(fmt(do.call(rbind, rows)), file.path(here, "adonis2.csv"), row.names = FALSE, quote = FALSE)
