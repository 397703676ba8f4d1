"""nasaudit: auditing the robustness of neural architecture search to data poisoning."""

__version__ = "0.1.0"
