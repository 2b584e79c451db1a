"""Catalogues of the simulated features: named taxa, pathways, gut-brain modules, planted effects.

Everything here is fixed (independent of the seed): the named species with their
target prevalence and abundance, the documented effects planted on them and on the
gut-brain modules, the pathway names, and the headline effects a correct analysis
must recover.  :func:`species_catalogue` and :func:`pathway_names` extend the named
features with synthetic ones to any size.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------
# Taxonomy.  MetaPhlAn 4 (mpa_vJan21) style lineages down to family.
# --------------------------------------------------------------------------------------
FAMILY_LINEAGES = {
    "Ruminococcaceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Ruminococcaceae",
    "Oscillospiraceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Oscillospiraceae",
    "Lachnospiraceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Lachnospiraceae",
    "Eubacteriaceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Eubacteriaceae",
    "Christensenellaceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Christensenellaceae",
    "Peptostreptococcaceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Peptostreptococcaceae",
    "Clostridiaceae": "k__Bacteria|p__Firmicutes|c__Clostridia|o__Eubacteriales|f__Clostridiaceae",
    "Veillonellaceae": "k__Bacteria|p__Firmicutes|c__Negativicutes|o__Veillonellales|f__Veillonellaceae",
    "Acidaminococcaceae": "k__Bacteria|p__Firmicutes|c__Negativicutes|o__Acidaminococcales|f__Acidaminococcaceae",
    "Streptococcaceae": "k__Bacteria|p__Firmicutes|c__Bacilli|o__Lactobacillales|f__Streptococcaceae",
    "Lactobacillaceae": "k__Bacteria|p__Firmicutes|c__Bacilli|o__Lactobacillales|f__Lactobacillaceae",
    "Erysipelotrichaceae": "k__Bacteria|p__Firmicutes|c__Erysipelotrichia|o__Erysipelotrichales|f__Erysipelotrichaceae",
    "Bifidobacteriaceae": "k__Bacteria|p__Actinobacteria|c__Actinomycetia|o__Bifidobacteriales|f__Bifidobacteriaceae",
    "Eggerthellaceae": "k__Bacteria|p__Actinobacteria|c__Coriobacteriia|o__Eggerthellales|f__Eggerthellaceae",
    "Coriobacteriaceae": "k__Bacteria|p__Actinobacteria|c__Coriobacteriia|o__Coriobacteriales|f__Coriobacteriaceae",
    "Bacteroidaceae": "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Bacteroidaceae",
    "Prevotellaceae": "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Prevotellaceae",
    "Rikenellaceae": "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Rikenellaceae",
    "Tannerellaceae": "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Tannerellaceae",
    "Enterobacteriaceae": "k__Bacteria|p__Proteobacteria|c__Gammaproteobacteria|o__Enterobacterales|f__Enterobacteriaceae",
    "Sutterellaceae": "k__Bacteria|p__Proteobacteria|c__Betaproteobacteria|o__Burkholderiales|f__Sutterellaceae",
    "Akkermansiaceae": "k__Bacteria|p__Verrucomicrobia|c__Verrucomicrobiae|o__Verrucomicrobiales|f__Akkermansiaceae",
    "Fusobacteriaceae": "k__Bacteria|p__Fusobacteria|c__Fusobacteriia|o__Fusobacteriales|f__Fusobacteriaceae",
    "Methanobacteriaceae": "k__Archaea|p__Euryarchaeota|c__Methanobacteria|o__Methanobacteriales|f__Methanobacteriaceae",
}

# (family, genus, species name, target prevalence, baseline mean log abundance)
NAMED_SPECIES: tuple[tuple[str, str, str, float, float], ...] = (
    ("Ruminococcaceae", "Faecalibacterium", "Faecalibacterium_prausnitzii", 0.97, 3.0),
    ("Ruminococcaceae", "Ruminococcus", "Ruminococcus_bromii", 0.70, 2.0),
    ("Ruminococcaceae", "Ruminococcus", "Ruminococcus_torques", 0.60, 0.8),
    ("Oscillospiraceae", "Oscillibacter", "Oscillibacter_sp_57_20", 0.55, 0.5),
    ("Ruminococcaceae", "Subdoligranulum", "Subdoligranulum_variabile", 0.80, 1.2),
    ("Lachnospiraceae", "Coprococcus", "Coprococcus_comes", 0.80, 1.0),
    ("Lachnospiraceae", "Coprococcus", "Coprococcus_catus", 0.70, 0.5),
    ("Lachnospiraceae", "Roseburia", "Roseburia_intestinalis", 0.70, 1.0),
    ("Lachnospiraceae", "Roseburia", "Roseburia_hominis", 0.75, 0.8),
    ("Lachnospiraceae", "Anaerostipes", "Anaerostipes_hadrus", 0.85, 1.0),
    ("Lachnospiraceae", "Blautia", "Blautia_obeum", 0.90, 1.2),
    ("Lachnospiraceae", "Blautia", "Blautia_wexlerae", 0.92, 1.3),
    ("Lachnospiraceae", "Dorea", "Dorea_longicatena", 0.85, 0.8),
    ("Lachnospiraceae", "Dorea", "Dorea_formicigenerans", 0.80, 0.5),
    ("Lachnospiraceae", "Enterocloster", "Enterocloster_bolteae", 0.35, -0.5),
    ("Lachnospiraceae", "Lachnoclostridium", "Lachnoclostridium_sp_YL32", 0.40, -0.5),
    ("Eubacteriaceae", "Eubacterium", "Eubacterium_rectale", 0.90, 2.2),
    ("Eubacteriaceae", "Eubacterium", "Eubacterium_ventriosum", 0.60, 0.0),
    ("Christensenellaceae", "Christensenella", "Christensenella_minuta", 0.30, -0.5),
    ("Peptostreptococcaceae", "Clostridioides", "Clostridioides_difficile", 0.03, -1.5),
    ("Peptostreptococcaceae", "Romboutsia", "Romboutsia_ilealis", 0.45, -0.3),
    ("Clostridiaceae", "Clostridium", "Clostridium_perfringens", 0.04, -1.5),
    ("Veillonellaceae", "Dialister", "Dialister_invisus", 0.50, 1.0),
    ("Veillonellaceae", "Veillonella", "Veillonella_parvula", 0.35, -0.5),
    ("Acidaminococcaceae", "Phascolarctobacterium", "Phascolarctobacterium_faecium", 0.45, 1.0),
    ("Streptococcaceae", "Streptococcus", "Streptococcus_salivarius", 0.75, -0.2),
    ("Streptococcaceae", "Streptococcus", "Streptococcus_thermophilus", 0.40, -0.8),
    ("Lactobacillaceae", "Lactobacillus", "Lactobacillus_acidophilus", 0.04, -1.5),
    ("Lactobacillaceae", "Lacticaseibacillus", "Lacticaseibacillus_rhamnosus", 0.03, -1.5),
    ("Erysipelotrichaceae", "Holdemanella", "Holdemanella_biformis", 0.40, 0.2),
    ("Bifidobacteriaceae", "Bifidobacterium", "Bifidobacterium_bifidum", 0.60, 0.8),
    ("Bifidobacteriaceae", "Bifidobacterium", "Bifidobacterium_longum", 0.90, 1.5),
    ("Bifidobacteriaceae", "Bifidobacterium", "Bifidobacterium_adolescentis", 0.70, 1.5),
    ("Eggerthellaceae", "Eggerthella", "Eggerthella_lenta", 0.55, -0.8),
    ("Coriobacteriaceae", "Collinsella", "Collinsella_aerofaciens", 0.85, 0.8),
    ("Bacteroidaceae", "Bacteroides", "Bacteroides_uniformis", 0.90, 2.0),
    ("Bacteroidaceae", "Bacteroides", "Bacteroides_fragilis", 0.40, 0.5),
    ("Bacteroidaceae", "Phocaeicola", "Phocaeicola_vulgatus", 0.90, 2.2),
    ("Prevotellaceae", "Prevotella", "Prevotella_copri", 0.35, 2.5),
    ("Rikenellaceae", "Alistipes", "Alistipes_putredinis", 0.80, 1.5),
    ("Rikenellaceae", "Alistipes", "Alistipes_onderdonkii", 0.60, 0.5),
    ("Tannerellaceae", "Parabacteroides", "Parabacteroides_distasonis", 0.75, 0.5),
    ("Enterobacteriaceae", "Escherichia", "Escherichia_coli", 0.55, 0.0),
    ("Enterobacteriaceae", "Klebsiella", "Klebsiella_pneumoniae", 0.08, -1.0),
    ("Sutterellaceae", "Sutterella", "Sutterella_wadsworthensis", 0.40, 0.0),
    ("Akkermansiaceae", "Akkermansia", "Akkermansia_muciniphila", 0.45, 1.0),
    ("Fusobacteriaceae", "Fusobacterium", "Fusobacterium_nucleatum", 0.03, -1.5),
    ("Methanobacteriaceae", "Methanobrevibacter", "Methanobrevibacter_smithii", 0.30, 0.5),
)

# Synthetic genera ("g__Genus12") are spread over these families; repeats weight the
# draw towards the families that dominate a real adult gut.
_SYNTHETIC_FAMILY_CYCLE = (
    "Lachnospiraceae",
    "Oscillospiraceae",
    "Ruminococcaceae",
    "Lachnospiraceae",
    "Bacteroidaceae",
    "Oscillospiraceae",
    "Lachnospiraceae",
    "Eubacteriaceae",
    "Rikenellaceae",
    "Erysipelotrichaceae",
    "Lachnospiraceae",
    "Veillonellaceae",
    "Christensenellaceae",
    "Coriobacteriaceae",
    "Prevotellaceae",
    "Enterobacteriaceae",
)
_SPECIES_PER_SYNTHETIC_GENUS = 4

# Named species effects: (species, term, planted coefficient).  Disorder/drug effects
# are natural-log fold changes per unit exposure; covariate ones are per SD.
NAMED_SPECIES_EFFECTS: tuple[tuple[str, str, float], ...] = (
    # depression (acts on every AnyDep case; MDD adds to it)
    ("Ruminococcus_bromii", "AnyDep", -0.9),
    ("Coprococcus_comes", "AnyDep", -0.7),
    ("Dialister_invisus", "AnyDep", -0.6),
    ("Faecalibacterium_prausnitzii", "MDD", -0.5),
    # anxiety
    ("Bifidobacterium_bifidum", "AnyAnx", -1.0),
    # psychotropic drugs: confounding by indication for the disorders
    ("Eggerthella_lenta", "ssri", 0.9),
    ("Enterocloster_bolteae", "any_ptd", 0.8),
    ("Holdemanella_biformis", "ssri", -0.7),
    # other medication (adjusted for in the "meds" model)
    ("Streptococcus_salivarius", "ppi", 1.2),
    ("Veillonella_parvula", "ppi", 0.7),
    ("Escherichia_coli", "metformin", 0.9),
    ("Bifidobacterium_adolescentis", "laxatives", 0.6),
    # BMI / stool consistency: both differ between cases and controls
    ("Christensenella_minuta", "bmi", -0.5),
    ("Akkermansia_muciniphila", "bmi", -0.4),
    ("Methanobrevibacter_smithii", "bristol_stool", -0.6),
    ("Akkermansia_muciniphila", "bristol_stool", -0.3),
    ("Streptococcus_thermophilus", "bristol_stool", 0.4),
    ("Prevotella_copri", "age", -0.2),
    ("Bifidobacterium_longum", "age", -0.25),
)

# --------------------------------------------------------------------------------------
# Gut-brain modules.  The ids are this simulator's own fixed numbering; the labels are
# illustrative (modelled on the Valles-Colomer et al. 2019 GBM catalogue, whose
# official numbering is not reproduced here).
# --------------------------------------------------------------------------------------
_GBM_LABEL_LIST = (
    "Acetate synthesis I",
    "Acetate synthesis II",
    "Acetate synthesis III",
    "Acetate degradation",
    "Propionate synthesis I",
    "Propionate synthesis II",
    "Propionate synthesis III",
    "Propionate degradation",
    "Butyrate synthesis I",
    "Butyrate synthesis II",
    "Butyrate degradation",
    "Isovaleric acid synthesis I",
    "Isovaleric acid synthesis II",
    "Isovaleric acid degradation",
    "GABA synthesis I",
    "GABA synthesis II",
    "GABA synthesis III",
    "GABA degradation",
    "Glutamate synthesis I",
    "Glutamate synthesis II",
    "Glutamate degradation I",
    "Glutamate degradation II",
    "Tryptophan synthesis",
    "Tryptophan degradation",
    "Kynurenine synthesis",
    "Kynurenine degradation",
    "Quinolinic acid synthesis",
    "Quinolinic acid degradation",
    "DOPAC synthesis",
    "Dopamine synthesis",
    "Dopamine degradation",
    "Histamine synthesis",
    "Histamine degradation",
    "Nitric oxide synthesis I",
    "Nitric oxide synthesis II",
    "Nitric oxide degradation I",
    "Nitric oxide degradation II",
    "Acetylcholine synthesis",
    "Acetylcholine degradation",
    "Menaquinone synthesis I",
    "Menaquinone synthesis II",
    "Inositol synthesis",
    "Inositol degradation",
    "p-Cresol synthesis",
    "p-Cresol degradation",
    "S-Adenosylmethionine synthesis",
    "S-Adenosylmethionine degradation I",
    "S-Adenosylmethionine degradation II",
    "17-beta-Estradiol synthesis",
    "17-beta-Estradiol degradation",
    "Cortisol degradation",
    "Testosterone degradation",
    "Melatonin synthesis",
    "Serotonin synthesis",
    "Tryptamine synthesis",
    "ClpB (ATP-dependent chaperone)",
)
GBM_LABELS: dict[str, str] = {f"MGB{k + 1:03d}": lab for k, lab in enumerate(_GBM_LABEL_LIST)}
"""``MGB001``..``MGB056`` -> module description (column names of ``gbm.tsv``)."""

GBM_HEADLINE_MODULES: dict[str, str] = {
    "tryptophan": "MGB023",  # Tryptophan synthesis
    "glutamate": "MGB019",  # Glutamate synthesis I
    "dopac": "MGB029",  # DOPAC synthesis
}
"""The gut-brain modules planted lower in depression (MDD/dysthymia, hence AnyDep)."""

NAMED_GBM_EFFECTS: tuple[tuple[str, str, float], ...] = (
    ("MGB023", "AnyDep", -0.6),  # tryptophan synthesis
    ("MGB019", "AnyDep", -0.5),  # glutamate synthesis I
    ("MGB029", "AnyDep", -0.6),  # DOPAC synthesis
    ("MGB015", "AnyAnx", -0.4),  # GABA synthesis I
    ("MGB053", "MDD", -0.35),  # melatonin synthesis
    ("MGB024", "ssri", 0.5),  # tryptophan degradation
    ("MGB027", "any_ptd", 0.4),  # quinolinic acid synthesis
    ("MGB034", "ppi", 0.5),  # nitric oxide synthesis I
    ("MGB005", "bmi", 0.3),  # propionate synthesis I
    ("MGB009", "bristol_stool", -0.35),  # butyrate synthesis I
    ("MGB044", "bristol_stool", 0.3),  # p-Cresol synthesis
)

# --------------------------------------------------------------------------------------
# Pathways: real HUMAnN (MetaCyc) names first, then synthetic ones with ids >= PWY-8001.
# --------------------------------------------------------------------------------------
_REAL_PATHWAYS = (
    "PWY-5097: L-lysine biosynthesis VI",
    "PWY-6151: S-adenosyl-L-methionine salvage I",
    "PWY-7219: adenosine ribonucleotides de novo biosynthesis",
    "PWY-6122: 5-aminoimidazole ribonucleotide biosynthesis II",
    "PWY-6277: superpathway of 5-aminoimidazole ribonucleotide biosynthesis",
    "PWY-6121: 5-aminoimidazole ribonucleotide biosynthesis I",
    "PWY-1042: glycolysis IV",
    "PWY-7221: guanosine ribonucleotides de novo biosynthesis",
    "PWY-6609: adenine and adenosine salvage III",
    "PWY-5686: UMP biosynthesis I",
    "PWY-7220: adenosine deoxyribonucleotides de novo biosynthesis II",
    "PWY-7222: guanosine deoxyribonucleotides de novo biosynthesis II",
    "PWY-6387: UDP-N-acetylmuramoyl-pentapeptide biosynthesis I (meso-diaminopimelate containing)",
    "PWY-6386: UDP-N-acetylmuramoyl-pentapeptide biosynthesis II (lysine-containing)",
    "PEPTIDOGLYCANSYN-PWY: peptidoglycan biosynthesis I (meso-diaminopimelate containing)",
    "ILEUSYN-PWY: L-isoleucine biosynthesis I (from threonine)",
    "VALSYN-PWY: L-valine biosynthesis",
    "BRANCHED-CHAIN-AA-SYN-PWY: superpathway of branched chain amino acid biosynthesis",
    "TRPSYN-PWY: L-tryptophan biosynthesis",
    "PWY-6163: chorismate biosynthesis from 3-dehydroquinate",
    "ARO-PWY: chorismate biosynthesis I",
    "COMPLETE-ARO-PWY: superpathway of aromatic amino acid biosynthesis",
    "PWY-3841: folate transformations II",
    "PWY-5100: pyruvate fermentation to acetate and lactate II",
    "PWY-5676: acetyl-CoA fermentation to butanoate II",
    "CENTFERM-PWY: pyruvate fermentation to butanoate",
    "P108-PWY: pyruvate fermentation to propanoate I",
    "PWY-5022: 4-aminobutanoate degradation V",
    "GLUTORN-PWY: L-ornithine biosynthesis I",
    "PWY-4981: L-proline biosynthesis II (from arginine)",
    "ARGSYN-PWY: L-arginine biosynthesis I (via L-ornithine)",
    "PWY-5505: L-glutamate and L-glutamine biosynthesis",
    "GLUDEG-I-PWY: GABA shunt",
    "PWY-6305: putrescine biosynthesis IV",
    "HISTSYN-PWY: L-histidine biosynthesis",
    "PWY-5103: L-isoleucine biosynthesis III",
    "PWY-5104: L-isoleucine biosynthesis IV",
    "THRESYN-PWY: superpathway of L-threonine biosynthesis",
    "HOMOSER-METSYN-PWY: L-methionine biosynthesis I",
    "PWY-724: superpathway of L-lysine, L-threonine and L-methionine biosynthesis II",
    "DTDPRHAMSYN-PWY: dTDP-L-rhamnose biosynthesis I",
    "PWY-6737: starch degradation V",
    "GLYCOGENSYNTH-PWY: glycogen biosynthesis I (from ADP-D-Glucose)",
    "PWY-5695: inosine 5'-phosphate degradation",
    "NONOXIPENT-PWY: pentose phosphate pathway (non-oxidative branch) I",
    "PWY-6700: queuosine biosynthesis I (de novo)",
    "COA-PWY: coenzyme A biosynthesis I (prokaryotic)",
    "PANTO-PWY: phosphopantothenate biosynthesis I",
    "PWY-6892: thiazole component of thiamine diphosphate biosynthesis I",
    "PWY-5667: CDP-diacylglycerol biosynthesis I",
    "PWY0-1319: CDP-diacylglycerol biosynthesis II",
    "PWY-4242: pantothenate and coenzyme A biosynthesis III",
    "PWY-7663: gondoate biosynthesis (anaerobic)",
    "FASYN-ELONG-PWY: fatty acid elongation -- saturated",
    "PWY-5973: cis-vaccenate biosynthesis",
    "RIBOSYN2-PWY: flavin biosynthesis I (bacteria and plants)",
)
_PWY_COMPOUNDS = (
    "L-serine",
    "L-threonine",
    "L-alanine",
    "glycine",
    "L-cysteine",
    "L-leucine",
    "L-tyrosine",
    "L-phenylalanine",
    "L-asparagine",
    "L-aspartate",
    "L-glutamine",
    "putrescine",
    "spermidine",
    "biotin",
    "cobalamin",
    "thiamine",
    "riboflavin",
    "pyridoxal 5'-phosphate",
    "NAD",
    "heme",
    "ubiquinol-8",
    "menaquinol-8",
    "lipid IVA",
    "CMP-legionaminate",
    "UDP-N-acetyl-D-glucosamine",
    "GDP-mannose",
    "dTDP-L-rhamnose",
    "trehalose",
    "sucrose",
    "lactose",
    "galactose",
    "mannan",
    "xylan",
    "pectin",
    "fucose",
    "rhamnose",
    "L-arabinose",
    "D-galacturonate",
    "glycerol",
    "ethanolamine",
    "urate",
    "allantoin",
    "4-hydroxyphenylacetate",
    "myo-inositol",
    "sulfoquinovose",
)
_PWY_PROCESSES = ("biosynthesis", "degradation", "salvage", "fermentation")
_ROMAN = ("I", "II", "III", "IV", "V", "VI")

# --------------------------------------------------------------------------------------
# Headline planted effects (what a correct analysis must recover).
# --------------------------------------------------------------------------------------
HEADLINE_FEATURES: dict[str, list[tuple[str, str, str]]] = {
    # R. bromii (and other butyrate producers) lower in depression.
    "depression_species": [
        ("species", "s__Ruminococcus_bromii", "MDD"),
        ("species", "s__Ruminococcus_bromii", "dysthymia"),
        ("species", "s__Ruminococcus_bromii", "AnyDep"),
        ("species", "s__Coprococcus_comes", "AnyDep"),
        ("species", "s__Dialister_invisus", "AnyDep"),
    ],
    # B. bifidum lower in anxiety (planted on every anxiety case, so GAD and AnyAnx).
    "anxiety_species": [
        ("species", "s__Bifidobacterium_bifidum", "GAD"),
        ("species", "s__Bifidobacterium_bifidum", "AnyAnx"),
    ],
    # Tryptophan / glutamate / DOPAC synthesis modules lower in depression.
    "depression_gbm": [("gbm", mgb, exp) for mgb in GBM_HEADLINE_MODULES.values() for exp in ("MDD", "dysthymia", "AnyDep")],
    # Drug-driven: E. lenta up with SSRIs (and hence with any psychotropic).
    "drug_species": [
        ("species", "s__Eggerthella_lenta", "ssri"),
        ("species", "s__Eggerthella_lenta", "any_ptd"),
        ("species", "s__Enterocloster_bolteae", "any_ptd"),
    ],
}
"""Theme -> (layer, feature, exposure) triples whose truth is non-zero and detectable."""

HEADLINE_SIGNS: dict[tuple[str, str, str], int] = {
    triple: (1 if theme == "drug_species" else -1) for theme, triples in HEADLINE_FEATURES.items() for triple in triples
}
"""(layer, feature, exposure) -> planted sign (+1 / -1) of each headline effect."""

DRUG_CONFOUNDED_FEATURES: list[tuple[str, str]] = [
    ("species", "s__Eggerthella_lenta"),
    ("species", "s__Enterocloster_bolteae"),
    ("species", "s__Holdemanella_biformis"),
]
"""Drug-driven features: truth 0 for every disorder, non-zero for ssri/any_ptd.

Because psychotropic use is enriched among cases their crude disorder association is
spurious and shrinks after adjusting for ``ssri``/``any_ptd``."""

COVARIATE_CONFOUNDED_FEATURES: list[tuple[str, str, str]] = [
    ("species", "s__Christensenella_minuta", "bmi"),
    ("species", "s__Akkermansia_muciniphila", "bmi"),
    ("species", "s__Methanobrevibacter_smithii", "bristol_stool"),
    ("species", "s__Akkermansia_muciniphila", "bristol_stool"),
    ("gbm", "MGB009", "bristol_stool"),
]
"""Features driven by BMI / stool consistency (truth 0 for every plan exposure)."""


# --------------------------------------------------------------------------------------
# Catalogues of any size.
# --------------------------------------------------------------------------------------
def species_catalogue(n_species: int) -> dict[str, list[str]]:
    """Species names and lineages (kingdom..genus) for ``n_species`` species.

    The first ``len(NAMED_SPECIES)`` are the named taxa; synthetic ones
    ``Genus{g}_species{s}`` fill the rest, 4 per genus, genera cycling over
    ``_SYNTHETIC_FAMILY_CYCLE`` (deterministic: independent of the seed).

    Parameters
    ----------
    n_species
        Number of species (at least ``len(NAMED_SPECIES)``).

    Returns
    -------
    dict
        ``"species"``: names without ``s__`` (``Faecalibacterium_prausnitzii``,
        ``Genus1_species1``...); ``"lineage"``: the matching ``k__...|g__Genus``.
    """
    species: list[str] = []
    lineage: list[str] = []
    for fam, genus, name, _, _ in NAMED_SPECIES:
        species.append(name)
        lineage.append(f"{FAMILY_LINEAGES[fam]}|g__{genus}")
    for k in range(n_species - len(NAMED_SPECIES)):
        g = k // _SPECIES_PER_SYNTHETIC_GENUS + 1
        s = k % _SPECIES_PER_SYNTHETIC_GENUS + 1
        fam = _SYNTHETIC_FAMILY_CYCLE[(g - 1) % len(_SYNTHETIC_FAMILY_CYCLE)]
        species.append(f"Genus{g}_species{s}")
        lineage.append(f"{FAMILY_LINEAGES[fam]}|g__Genus{g}")
    return {"species": species, "lineage": lineage}


def pathway_names(n_pathways: int) -> list[str]:
    """``n_pathways`` unique HUMAnN-style names: real MetaCyc ones, then synthetic.

    Parameters
    ----------
    n_pathways
        Number of names.

    Returns
    -------
    list of str
        ``"PWY-5097: L-lysine biosynthesis VI"``..., then ``"PWY-8001: ..."`` onwards.
    """
    names = list(_REAL_PATHWAYS[:n_pathways])
    nc, npr, nr = len(_PWY_COMPOUNDS), len(_PWY_PROCESSES), len(_ROMAN)
    for k in range(n_pathways - len(names)):
        comp = _PWY_COMPOUNDS[k % nc]
        proc = _PWY_PROCESSES[(k // nc) % npr]
        rom = _ROMAN[(k // (nc * npr)) % nr]
        extra = k // (nc * npr * nr)
        suffix = f" (variant {extra + 1})" if extra else ""
        names.append(f"PWY-{8001 + k}: {comp} {proc} {rom}{suffix}")
    return names
