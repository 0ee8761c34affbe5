from drgrpo.cli import main

raise SystemExit(main())
