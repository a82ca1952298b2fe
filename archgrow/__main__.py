from archgrow.cli import main

raise SystemExit(main())
