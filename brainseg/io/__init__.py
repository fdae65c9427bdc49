"""Reading and writing: slices, volumes (NIfTI, DICOM, patient folders), the Kaggle dataset, weights, the Hub."""
