"""What every MOPS floor may use (atomic files, machine names); it imports none of them."""
