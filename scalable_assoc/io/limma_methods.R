# limma-voom and limma-trend for scalable_assoc's methods benchmark (scalable_assoc/io/limma_r.py writes the inputs).
#
# Usage: Rscript --vanilla limma_methods.R WORKDIR
# WORKDIR/jobs.tsv: one row per job: job (folder name), samples, features, exposure, methods (comma-separated: voom, trend),
#   prior_count (limma-trend's prior count of the log2-CPM).
# WORKDIR/<job>/counts.tsv: samples x features read counts, tab-separated integers, no header.
# WORKDIR/<job>/design.tsv: samples x covariates (numeric, header = column names, incl. the exposure; no intercept).
# Writes WORKDIR/<job>/<method>.tsv (logFC, P.Value of the exposure's coefficient, one row per feature in input order,
# 17 significant digits) and WORKDIR/<job>/done; a job that fails writes WORKDIR/<job>/error.txt and the others go on.

suppressPackageStartupMessages(library(limma))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript limma_methods.R WORKDIR")
workdir <- args[[1]]
jobs <- read.delim(file.path(workdir, "jobs.tsv"), colClasses = "character", check.names = FALSE)

# edgeR's cpm(log = TRUE, prior.count): the prior scaled by library size, added to counts and (twice) to library sizes.
log_cpm <- function(counts, prior_count) {
  lib <- colSums(counts)
  prior <- prior_count * lib / mean(lib)
  log2(t((t(counts) + prior) / (lib + 2 * prior) * 1e6))
}

exposure_table <- function(fit, exposure) {
  data.frame(logFC = sprintf("%.17g", fit$coefficients[, exposure]), P.Value = sprintf("%.17g", fit$p.value[, exposure]))
}

run_job <- function(job) {
  folder <- file.path(workdir, job$job)
  samples <- as.integer(job$samples)
  features <- as.integer(job$features)
  counts <- matrix(scan(file.path(folder, "counts.tsv"), what = double(), sep = "\t", quiet = TRUE), nrow = samples, byrow = TRUE)
  if (ncol(counts) != features) stop(sprintf("counts.tsv has %d columns, expected %d", ncol(counts), features))
  counts <- t(counts)  # limma: features in rows, samples in columns
  covariates <- read.delim(file.path(folder, "design.tsv"), check.names = FALSE)
  design <- cbind("(Intercept)" = 1, as.matrix(covariates))
  if (qr(design)$rank < ncol(design)) stop("the design (intercept + covariates) is not of full rank")
  exposure <- job$exposure
  for (method in strsplit(job$methods, ",", fixed = TRUE)[[1]]) {
    if (method == "voom") {
      fit <- eBayes(lmFit(voom(counts, design), design))
    } else if (method == "trend") {
      fit <- eBayes(lmFit(log_cpm(counts, as.numeric(job$prior_count)), design), trend = TRUE)
    } else {
      stop(sprintf("unknown method '%s'", method))
    }
    write.table(exposure_table(fit, exposure), file.path(folder, paste0(method, ".tsv")), sep = "\t", quote = FALSE, row.names = FALSE)
  }
  file.create(file.path(folder, "done"))
}

for (i in seq_len(nrow(jobs))) {
  job <- jobs[i, , drop = FALSE]
  outcome <- tryCatch({ run_job(job); NULL }, error = function(e) conditionMessage(e))
  if (!is.null(outcome)) writeLines(outcome, file.path(workdir, job$job, "error.txt"))
}
