"""Math shared by several detectors, written once."""
