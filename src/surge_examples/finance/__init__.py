"""Finance applications: a credit-risk model (gradient-boosted trees beside a network) on the
HMDA mortgage data, and a price forecaster on monthly stock prices (`docs/applications/
finance.md`)."""
