from pathvlm.cli import main

raise SystemExit(main())
