from __future__ import annotations

from campaign.cli import main

raise SystemExit(main())
