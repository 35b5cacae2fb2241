package cluster

import "time"

// SetClock makes the sweeper read the time from now.
func (d *Sweeper) SetClock(now func() time.Time) { d.now = now }
