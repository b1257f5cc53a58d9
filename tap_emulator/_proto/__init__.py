"""Generated from proto/ by `make proto` (scripts/generate_proto.py); never edit."""
