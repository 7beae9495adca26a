"""Face analysis: landmarks, tracking, crop boxes, blend masks and paste-back."""
