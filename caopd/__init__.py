"""CaOPD: Calibration-Aware On-Policy Distillation on top of TRL's self-distillation trainer."""
