"""What HR and payroll read: corrections (propose, approve) and exports."""
