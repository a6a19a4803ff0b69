"""Recorded HTTP exchanges for the contract tests of adapters whose clouds cannot run here."""
