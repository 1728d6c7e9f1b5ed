"""Test doubles shared across the test tiers (fake IdP, ...)."""
