from drgrpo.app.cli import main

raise SystemExit(main())
