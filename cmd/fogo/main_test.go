package main

import (
	"os"
	"testing"
)

// TestMain lets the test binary stand in for the fogo binary: run with FOGO_TEST_AS_FOGO=1 (by the cluster tests,
// inside a network namespace) it is `fogo` with its arguments, so those tests need no separate build.
func TestMain(m *testing.M) {
	if os.Getenv("FOGO_TEST_AS_FOGO") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}
