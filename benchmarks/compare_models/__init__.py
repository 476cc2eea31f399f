"""One module per detector compared with anomalib beyond PaDiM, PatchCore and STPM (see
``compare_anomalib._plugin``): how each library builds the same method with the same settings."""
