"""What people see: console reports (no statistics here)."""
