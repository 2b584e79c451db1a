# Reference values for Benjamini-Hochberg from R's p.adjust(method = "BH").
# Run from this folder:  Rscript bh_padjust.R   (Debian package r-base-core)
# Writes bh_padjust.tsv: family, p (NA = no estimate), q (R; NA stays NA and is not
# counted in the family size, which is p.adjust's behaviour with NA).
set.seed(20261121)
families <- list(
  uniform = runif(200),
  signal = c(runif(150), rbeta(50, 0.05, 1)),
  with_na = { p <- runif(60)^2; p[c(3, 17, 18, 40)] <- NA; p },
  ties = c(rep(0.01, 10), rep(0.04, 10), rep(0.5, 5), 0, 1),
  single = 0.03,
  all_na = c(NA_real_, NA_real_)
)
rows <- do.call(rbind, lapply(names(families), function(name) {
  p <- families[[name]]
  data.frame(family = name, p = p, q = p.adjust(p, method = "BH"))
}))
write.table(rows, "bh_padjust.tsv", sep = "\t", quote = FALSE, row.names = FALSE, na = "NA")
cat(R.version.string, "\n")
