"""Stage 1: soft proposals from priors (box, gaussian, grabcut, sam) and the on-disk `ProposalBank`."""

from l2l.proposals.bank import MissingProposalError, ProposalBank, build_bank, prior_key
from l2l.proposals.methods import METHODS, Proposal, make_proposal
from l2l.proposals.prepare import prepare_bank

__all__ = ["METHODS", "MissingProposalError", "Proposal", "ProposalBank", "build_bank", "make_proposal",
           "prepare_bank", "prior_key"]
