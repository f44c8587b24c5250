"""Reading and preparing CTC data: folders, ground truth, preprocessing, augmentation, loss targets."""
