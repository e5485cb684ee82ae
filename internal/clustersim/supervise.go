package clustersim

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// restartDelay is how long the supervisor waits before starting an exited agent again.
const restartDelay = 3 * time.Second

// maxRestarts bounds the restarts of one agent by Supervise.
const maxRestarts = 1000

// Supervise starts each agent again once it has exited (a fenced agent exits: its host lost etcd), as a
// supervisor such as systemd would, until ctx ends; an attempt that fails (its host still cut off) is retried
// after restartDelay. Progress goes to w. The returned wait blocks until the supervision has stopped: call it
// after ctx's end and before Close.
func (c *Cluster) Supervise(ctx context.Context, w io.Writer) (wait func()) {
	var wg sync.WaitGroup
	for _, a := range []*Proc{c.East, c.West} {
		wg.Add(1)
		go func(p *Proc) {
			defer wg.Done()
			for i := 0; i < maxRestarts; i++ {
				select {
				case <-ctx.Done():
					return
				case <-p.Exited():
				}
				fmt.Fprintf(w, "agent %s exited (fenced: its host lost etcd?); starting it again in %s\n", p.Name, restartDelay)
				select {
				case <-ctx.Done():
					return
				case <-time.After(restartDelay):
				}
				if err := p.Start(ctx); err != nil {
					fmt.Fprintf(w, "agent %s: %v\n", p.Name, err)
					continue
				}
				fmt.Fprintf(w, "agent %s is live again\n", p.Name)
			}
		}(a)
	}
	return wg.Wait
}
