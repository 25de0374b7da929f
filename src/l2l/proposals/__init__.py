"""Stage 1: soft proposals from priors (box, gaussian, grabcut, sam) and the on-disk `ProposalBank`."""

from l2l.proposals.bank import ProposalBank, build_bank, prior_key
from l2l.proposals.methods import METHODS, Proposal, make_proposal

__all__ = ["METHODS", "Proposal", "ProposalBank", "build_bank", "make_proposal", "prior_key"]
