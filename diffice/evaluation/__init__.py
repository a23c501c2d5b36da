"""Evaluation of counterfactuals: the paper's metrics (metrics: FR, MAD, BKL, COUT, MQD, FID, FSD, SonoSim;
``diffice metrics``), the pairwise reading study (pairs: ``diffice pairs``) and the figures (figures)."""
