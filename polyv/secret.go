package polyv

import (
	"fmt"
	"log/slog"
)

// Secret is a credential that prints as "[redacted]" with any fmt verb, in
// slog and in JSON, so that it cannot leak through a log line or an error.
type Secret string

const redacted = "[redacted]"

// Format writes a placeholder, never the value.
func (Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(redacted)) }

// LogValue keeps the value out of slog output.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText keeps the value out of JSON and other text encodings.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Reveal returns the value. Call it only where the secret is used.
func (s Secret) Reveal() string { return string(s) }
