package svcflags

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadKeyTakesZ85KeysThatStartWithAt(t *testing.T) {
	key := "@:jV=k4&TuDM*^XjQRgNxVrdpNZRCJ!E=Fl!)YT@" // 40 characters of z85, '@' included
	if len(key) != 40 {
		t.Fatalf("test key has %d characters", len(key))
	}
	got, err := readKey(key)
	if err != nil || got != key {
		t.Fatalf("readKey(%q) = %q, %v; want the key itself", key, got, err)
	}
}

func TestReadKeyReadsAtFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(path, []byte("from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readKey("@" + path)
	if err != nil || got != "from-a-file" {
		t.Fatalf("readKey(@file) = %q, %v", got, err)
	}
	if _, err := readKey("@" + path + ".missing"); err == nil {
		t.Fatal("a missing @file must be an error")
	}
}
