"""Rewards: the math reward, the boxed-answer extraction and the Math-Verify worker process."""
