package state_test

import (
	"strings"
	"testing"

	"github.com/nopsync/nopsync/shared/state"
)

func TestFitKey(t *testing.T) {
	short := strings.Repeat("é", state.MaxKeyLen/2) // exactly MaxKeyLen bytes
	if got := state.FitKey(short); got != short {
		t.Errorf("a key within the limit was changed: %q", got)
	}
	long1 := strings.Repeat("é", 128)
	long2 := strings.Repeat("é", 127) + "e"
	k1, k2 := state.FitKey(long1), state.FitKey(long2)
	if err := state.CheckKey("doc key", k1); err != nil {
		t.Fatalf("FitKey gave an invalid key: %v", err)
	}
	if k1 == k2 || k1 != state.FitKey(long1) || !strings.HasPrefix(k1, "~sha256-") {
		t.Errorf("FitKey not one key per string: %q %q", k1, k2)
	}
}
