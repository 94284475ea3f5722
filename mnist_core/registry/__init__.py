"""Champion/challenger bookkeeping: the promotion rule (pure) and the store that records runs and the champion."""
