"""Stage 1: soft proposals from priors (box, gaussian, grabcut, sam) and the on-disk `ProposalBank`."""

from l2l.proposals.bank import MissingProposalError, ProposalBank, build_bank, prior_key
from l2l.proposals.methods import METHODS, Proposal, make_proposal
from l2l.proposals.prepare import BankSpec, data_cache_dir, prepare_bank, shared_cache

__all__ = ["BankSpec", "METHODS", "MissingProposalError", "Proposal", "ProposalBank", "build_bank", "make_proposal",
           "data_cache_dir", "prepare_bank", "prior_key", "shared_cache"]
