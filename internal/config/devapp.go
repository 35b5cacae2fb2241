package config

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
)

// DevApp returns the development app kept in dataDir, making it on first
// use. It mirrors what `php artisan reverb:install` writes: a six-digit id
// and twenty lowercase characters each for key and secret. Keeping it in
// the data directory means a restart keeps the credentials a developer
// pasted into their .env.
func DevApp(dataDir string) (App, bool, error) {
	path := filepath.Join(dataDir, "dev-app.json")
	raw, err := os.ReadFile(path)
	if err == nil {
		var app App
		if err := json.Unmarshal(raw, &app); err != nil {
			return App{}, false, fmt.Errorf("%s: %w", path, err)
		}
		if app.ID != "" && app.Key != "" && app.Secret != "" {
			return app, false, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return App{}, false, err
	}
	id, err := rand.Int(rand.Reader, big.NewInt(900000))
	if err != nil {
		return App{}, false, err
	}
	app := App{ID: fmt.Sprint(100000 + id.Int64()), Key: randomLower(20), Secret: randomLower(20)}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return App{}, false, err
	}
	out, _ := json.MarshalIndent(app, "", "  ")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		return App{}, false, err
	}
	return app, true, nil
}

func randomLower(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	for i := range b {
		v, err := rand.Int(rand.Reader, big.NewInt(int64(len(letters))))
		if err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		b[i] = letters[v.Int64()]
	}
	return string(b)
}
