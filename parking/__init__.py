"""Leave-first-pay-later parking: plate matching, tariffs, settlement."""
