package testwait

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	var n atomic.Int32
	if !Until(time.Second, func() bool { return n.Add(1) == 3 }) || n.Load() != 3 {
		t.Errorf("Until() gave up on a condition that came true on the 3rd poll (%d polls)", n.Load())
	}
	start := time.Now()
	if Until(50*time.Millisecond, func() bool { return false }) {
		t.Error("Until() = true for a condition never true")
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Errorf("Until() gave up after %v, before its bound", waited)
	}
}
