from agentlatd.cli import main

raise SystemExit(main())
