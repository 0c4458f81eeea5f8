"""What every command needs to run a trained model: checkpoints, run folders, input
preprocessing, the preprocessing cache, frame datasets, devices and precision. Imports nothing
from training, localization or evaluation."""
