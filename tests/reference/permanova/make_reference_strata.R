# Reference values for tests/test_permanova.py's permutations within strata, from R's vegan and permute.
#
# Regenerate (from the repository root; needs R with vegan >= 2.6 and permute, e.g. apt r-cran-vegan):
#   Rscript tests/reference/permanova/make_reference_strata.R
# Reads data_n60.csv (written by make_reference.R). Strata: the factor cov2 (3 levels, like families or
# sites whose members are exchangeable only among themselves). Writes, next to this script:
#   strata_permutations.csv  199 permutations drawn by permute::shuffleSet(n, 199, how(blocks = cov2)),
#                            one per row, 1-based sample positions (vegan's convention: permuted row i
#                            takes sample P[i])
#   strata_adonis2.csv       adonis2(D ~ cov1 + exp_num + exp_bin, data, by = "margin", permutations = P)
#                            with that matrix P: the exp_bin row (Df, SumOfSqs, F, Pr(>F)), the residual Df and
#                            SS, for D = vegdist(x, "bray") and D = dist(clr) ("aitchison", as in make_reference.R)
#   strata_f_permuted.csv    vegan's permuted F of exp_bin, one per permutation and distance
# Because both sides use the same permutations, the tests compare p-values exactly and every permuted F to
# 1e-8 relative; 17 significant digits.
suppressPackageStartupMessages({
  library(vegan)
  library(permute)
})
here <- local({
  args <- commandArgs(trailingOnly = FALSE)
  f <- sub("^--file=", "", args[grep("^--file=", args)])
  if (length(f)) dirname(normalizePath(f)) else "."
})
fmt <- function(df) {
  for (j in seq_along(df)) if (is.double(df[[j]])) df[[j]] <- trimws(formatC(df[[j]], digits = 17, format = "g"))
  df
}
clr <- function(x) {
  c0 <- min(x[x > 0]) / 2
  l <- log(x + c0)
  l - rowMeans(l)
}
d <- read.csv(file.path(here, "data_n60.csv"))
d$cov2 <- factor(d$cov2)
x <- as.matrix(d[, grep("^f", names(d))])
set.seed(2024)
P <- shuffleSet(nrow(d), 199, control = how(blocks = d$cov2))
stopifnot(all(apply(P, 1, function(take) all(d$cov2[take] == d$cov2))))  # each sample stays in its stratum
write.table(unclass(P)[, , drop = FALSE], file.path(here, "strata_permutations.csv"), sep = ",",
            row.names = FALSE, col.names = FALSE)
rows <- list()
permuted <- list()
dists <- list(bray = vegdist(x, "bray"), aitchison = dist(clr(x)))
for (distance in names(dists)) {
  D <- dists[[distance]]
  a <- adonis2(D ~ cov1 + exp_num + exp_bin, data = d, by = "margin", permutations = P)
  rows[[distance]] <- data.frame(
    distance = distance, df = a["exp_bin", "Df"], ss = a["exp_bin", "SumOfSqs"], f = a["exp_bin", "F"],
    p = a["exp_bin", "Pr(>F)"], df_residual = a["Residual", "Df"], ss_residual = a["Residual", "SumOfSqs"],
    permutations = nrow(P))
  f_perm <- attr(a, "F.perm")[, which(rownames(a) == "exp_bin")]
  permuted[[distance]] <- data.frame(distance = distance, permutation = seq_len(nrow(P)), f = f_perm)
}
write.csv(fmt(do.call(rbind, rows)), file.path(here, "strata_adonis2.csv"), row.names = FALSE, quote = FALSE)
write.csv(fmt(do.call(rbind, permuted)), file.path(here, "strata_f_permuted.csv"), row.names = FALSE, quote = FALSE)
