# Reference values for the meta-analysis kernel (scalable_assoc/stats/meta.py) from
# R metafor::rma.uni, one row at a time.
# Run from this folder:  Rscript metafor_reference.R   (Debian packages r-base-core, r-cran-metafor)
# Input: meta_input.tsv, written by make_input.py (numpy, fixed seed; see its docstring
# for what each row tests): row, beta_1..beta_4, se_1..se_4, NA = cohort missing.
# Output: metafor_reference.tsv, first line a comment with the R and metafor versions,
# then one line per (row, method, test, omitted):
#   method  FE, DL, REML, PM;   test  z or knha (Hartung-Knapp-Sidik-Jonkman);
#   omitted 0 for the fit of all cohorts of the row, j for leave1out()'s fit without
#           cohort j (REML only, both tests; NA columns are absent cohorts, not listed);
#   estimate, se, pval, tau2, QE, QEp, I2, k as rma.uni / leave1out report them.
# Tight convergence: REML Fisher scoring threshold 1e-12 (absolute, on tau2; every
# tau2 here is of order 1e-4..1), PM uniroot tol 1e-14. A single-cohort row is fitted
# but not left out (leave1out needs k >= 2).
suppressPackageStartupMessages(library(metafor))
input <- read.delim("meta_input.tsv")
controls <- list(FE = list(), DL = list(),
                 REML = list(threshold = 1e-12, maxiter = 10000),
                 PM = list(tol = 1e-14, maxiter = 10000))
fit_row <- function(row, method, test) {
  beta <- unlist(input[row, sprintf("beta_%d", 1:4)])
  se <- unlist(input[row, sprintf("se_%d", 1:4)])
  present <- !is.na(beta)
  rma.uni(yi = beta[present], sei = se[present], method = method, test = test,
          control = controls[[method]], slab = as.character(which(present)))
}
rows <- list()
for (row in seq_len(nrow(input))) {
  for (method in names(controls)) {
    for (test in c("z", "knha")) {
      fit <- suppressWarnings(fit_row(row, method, test))  # FE + knha warns "not meant for FE models"
      rows[[length(rows) + 1]] <- data.frame(
        row = input$row[row], method = method, test = test, omitted = 0L,
        estimate = c(fit$beta), se = fit$se, pval = fit$pval, tau2 = fit$tau2,
        QE = fit$QE, QEp = fit$QEp, I2 = fit$I2, k = fit$k)
      if (method == "REML" && fit$k >= 2) {
        loo <- as.data.frame(suppressWarnings(leave1out(fit)))
        rows[[length(rows) + 1]] <- data.frame(
          row = input$row[row], method = method, test = test, omitted = as.integer(rownames(loo)),
          estimate = loo$estimate, se = loo$se, pval = loo$pval, tau2 = loo$tau2,
          QE = loo$Q, QEp = loo$Qp, I2 = loo$I2, k = fit$k - 1L)
      }
    }
  }
}
reference <- do.call(rbind, rows)
numeric <- c("estimate", "se", "pval", "tau2", "QE", "QEp", "I2")
for (column in numeric) reference[[column]] <- sprintf("%.17g", reference[[column]])
versions <- sprintf("# %s; metafor %s", R.version.string, as.character(packageVersion("metafor")))
writeLines(versions, "metafor_reference.tsv")
suppressWarnings(write.table(reference, "metafor_reference.tsv", sep = "\t", quote = FALSE,
                             row.names = FALSE, na = "NA", append = TRUE))
cat(versions, "\n")
