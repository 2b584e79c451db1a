# R side of benchmarks/suite.py: limma lmFit and a per-feature lm() loop on the same
# transformed matrix and designs our kernel fits.
#
#   Rscript benchmarks/suite_r.R DIR OUT.json [lm_sample_per_analysis] [limma_repeats]
#
# limma_seconds is the best of limma_repeats (default 3) lmFit rounds over every design.
#
# DIR (written by suite.py) holds Y.bin (n x m float64, column-major, little endian),
# analyses.tsv (id, n_rows, p, rows file, X file) and per analysis rows (int32,
# 1-based) and X (n_rows x p float64, column-major; the exposure is the last column).
# Only the fitting is timed (reading the files is not); the whole Rscript process,
# start-up and library(limma) included, is measured by suite.py.
suppressPackageStartupMessages(library(limma))

args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]
out <- args[2]
lm_sample <- if (length(args) >= 3) as.integer(args[3]) else 8L
limma_repeats <- if (length(args) >= 4) as.integer(args[4]) else 3L

dims <- scan(file.path(dir, "dims.txt"), quiet = TRUE)
n <- dims[1]; m <- dims[2]
con <- file(file.path(dir, "Y.bin"), "rb")
Y <- matrix(readBin(con, "double", n = n * m, size = 8, endian = "little"), nrow = n, ncol = m)
close(con)
Yt <- t(Y)  # limma wants features x samples
analyses <- read.delim(file.path(dir, "analyses.tsv"), stringsAsFactors = FALSE)
designs <- lapply(seq_len(nrow(analyses)), function(i) {
  a <- analyses[i, ]
  rc <- file(file.path(dir, a$rows_file), "rb"); rows <- readBin(rc, "integer", n = a$n_rows, size = 4, endian = "little"); close(rc)
  xc <- file(file.path(dir, a$x_file), "rb"); X <- matrix(readBin(xc, "double", n = a$n_rows * a$p, size = 8, endian = "little"), nrow = a$n_rows); close(xc)
  list(rows = rows, X = X)
})

# limma: one lmFit per analysis over all features (coefficient and its standard error).
limma_once <- function() {
  beta <- matrix(NA_real_, m, length(designs))
  se <- matrix(NA_real_, m, length(designs))
  started <- proc.time()[["elapsed"]]
  for (i in seq_along(designs)) {
    d <- designs[[i]]
    fit <- lmFit(Yt[, d$rows, drop = FALSE], d$X)
    p <- ncol(d$X)
    beta[, i] <- fit$coefficients[, p]
    se[, i] <- fit$stdev.unscaled[, p] * fit$sigma
  }
  list(seconds = proc.time()[["elapsed"]] - started, beta = beta, se = se)
}
limma_runs <- lapply(seq_len(limma_repeats), function(i) limma_once())
limma_seconds <- min(sapply(limma_runs, function(r) r$seconds))
bc <- file(file.path(dir, "limma_beta.bin"), "wb"); writeBin(as.vector(limma_runs[[1]]$beta), bc, size = 8, endian = "little"); close(bc)
sc <- file(file.path(dir, "limma_se.bin"), "wb"); writeBin(as.vector(limma_runs[[1]]$se), sc, size = 8, endian = "little"); close(sc)

# A per-feature loop as MaAsLin2 runs it: lm() with a formula and summary() per feature,
# timed on lm_sample random features per analysis and scaled to all of them.
set.seed(1)
fits <- 0L
started <- proc.time()[["elapsed"]]
for (i in seq_along(designs)) {
  d <- designs[[i]]
  X <- d$X
  for (j in sample.int(m, lm_sample)) {
    frame <- data.frame(y = Y[d$rows, j], X[, -1, drop = FALSE])
    coefficients <- summary(lm(y ~ ., data = frame))$coefficients
    fits <- fits + 1L
  }
}
lm_per_fit <- (proc.time()[["elapsed"]] - started) / fits

writeLines(sprintf(
  '{"limma_seconds": %.6f, "limma_all_runs": [%s], "lm_per_fit_seconds": %.8f, "lm_fits_timed": %d, "features": %d, "analyses": %d, "R": "%s", "limma": "%s"}',
  limma_seconds, paste(sprintf("%.6f", sapply(limma_runs, function(r) r$seconds)), collapse = ", "),
  lm_per_fit, fits, m, length(designs), paste(R.version$major, R.version$minor, sep = "."), as.character(packageVersion("limma"))
), out)
