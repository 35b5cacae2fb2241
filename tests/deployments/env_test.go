package deployments

import "testing"

// The --help parser finds the settings the README documents, and the
// allow-list of announced settings says when it is no longer needed.
func TestEnvAllowList(t *testing.T) {
	buildBinaries(t)
	for _, n := range []string{"NATS_URL", "REVERB_APP_ID", "REVERB_SERVER_PORT", "RESOUND_APPS_FILE", "RESOUND_LOG_FORMAT", "RESOUND_DATA_DIR"} {
		if !helpEnv[n] {
			t.Errorf("gateway --help does not list %s: has its format changed?", n)
		}
	}
	for _, n := range sortedKeys(comingEnv) {
		if helpEnv[n] {
			t.Logf("%s is listed by --help now; its allow-list entry is redundant", n)
		}
	}
}
