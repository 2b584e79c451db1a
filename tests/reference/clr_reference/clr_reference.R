# The reference study's CLR, re-implemented from the group's description (base R only):
# "log(x / geometric mean of the species row), pseudocount half the smallest non-zero value of each matrix".
#
#   clr(x, ref) = log(x + c_x) - rowMeans(log(ref + c_r)),  c_x = min(x[x > 0]) / 2,  c_r = min(ref[ref > 0]) / 2
#
# Run from this folder:  Rscript clr_reference.R   (inputs from make_inputs.py; outputs committed, CI has no R)
# Writes, samples x pathways, 17 significant digits:
#   clr_after.tsv   the published pipeline: CLR on the full matrices, the prevalence filter after
#                   (scalable_assoc: clr_reference: species, filter: after_transform); all pathways.
#   clr_before.tsv  the same reference, prevalence filter first (scalable_assoc: clr_reference: species,
#                   filter: before_transform): each matrix cut to its kept features before c and the means.
clr <- function(x, ref) {
  c_x <- min(x[x > 0]) / 2
  c_r <- min(ref[ref > 0]) / 2
  log(x + c_x) - rowMeans(log(ref + c_r))
}
min_prevalence <- 0.3
kept <- function(x) x[, colMeans(x > 0) >= min_prevalence, drop = FALSE]
read <- function(path) as.matrix(read.delim(path, row.names = 1, check.names = FALSE))
species <- read("species.tsv")
pathways <- read("pathways.tsv")
stopifnot(identical(rownames(species), rownames(pathways)))
write <- function(values, path) {
  out <- data.frame(sample_id = rownames(values), format(values, digits = 17, scientific = TRUE, trim = TRUE), check.names = FALSE)
  colnames(out) <- c("sample_id", colnames(values))
  write.table(out, path, sep = "\t", quote = FALSE, row.names = FALSE)
}
write(clr(pathways, species), "clr_after.tsv")
write(clr(kept(pathways), kept(species)), "clr_before.tsv")
