# Reference values for tests/test_limma_r.py: a tiny data set and limma-voom / limma-trend fitted by hand in an R session.
# Run from this folder: Rscript --vanilla make_reference.R   (R 4.2.2, limma 3.54.1 made the committed files)
# Writes counts.tsv (24 samples x 10 features, no header), design.tsv (disorder, age; header) and reference.tsv
# (method, feature = 0-based column of counts, logFC and P.Value of disorder, 17 significant digits).
# limma-trend's log2-CPM is edgeR's cpm(log = TRUE, prior.count = 3), written out here (edgeR is not needed):
# log2((count + 3 * lib / mean(lib)) / (lib + 6 * lib / mean(lib)) * 1e6).
suppressPackageStartupMessages(library(limma))
set.seed(20261206)
n <- 24
features <- 10
disorder <- rep(c(0, 1), each = n / 2)
age <- round(rnorm(n, 50, 10), 1)
depth <- round(runif(n, 5000, 20000))
base <- exp(rnorm(features, 0, 1.5))
effect <- c(1.0, -0.8, 0.6, rep(0, features - 3))
counts <- matrix(0L, n, features)
for (i in seq_len(n)) {
  rate <- base * exp(effect * disorder[i] + 0.01 * (age[i] - 50))
  counts[i, ] <- rnbinom(features, mu = depth[i] * rate / sum(rate), size = 5)
}
write.table(counts, "counts.tsv", sep = "\t", quote = FALSE, row.names = FALSE, col.names = FALSE)
write.table(data.frame(disorder = disorder, age = age), "design.tsv", sep = "\t", quote = FALSE, row.names = FALSE)

y <- t(counts)
design <- model.matrix(~ disorder + age)
voom_fit <- eBayes(lmFit(voom(y, design), design))
lib <- colSums(y)
prior <- 3 * lib / mean(lib)
logcpm <- log2(t((t(y) + prior) / (lib + 2 * prior)) * 1e6)
trend_fit <- eBayes(lmFit(logcpm, design), trend = TRUE)
table <- function(method, fit) {
  top <- topTable(fit, coef = "disorder", number = Inf, sort.by = "none")
  data.frame(method = method, feature = seq_len(features) - 1, logFC = sprintf("%.17g", top$logFC), P.Value = sprintf("%.17g", top$P.Value))
}
write.table(rbind(table("voom", voom_fit), table("trend", trend_fit)), "reference.tsv", sep = "\t", quote = FALSE, row.names = FALSE)
