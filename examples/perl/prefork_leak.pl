# A leaking prefork server: the parent listens and forks 4 workers; each worker accepts one
# connection at a time, replies, reads to EOF, and keeps the handle in a list instead of closing
# it. CLOSE-WAIT, held by the 4 workers (about a quarter each), one more descriptor per connection
# in the worker that served it; the parent's descriptors do not grow. At most 4 clients are
# served at once: the others wait in the accept queue.
# Run: perl prefork_leak.pl PORT
use strict;
use warnings;
use IO::Socket::INET;

my $port = $ARGV[0] // $ENV{PORT};
my $srv = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 1024, ReuseAddr => 1,
) or die "listen: $@\n";
my $reply = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

sub worker {
    my @served;
    while (1) {
        my $client = $srv->accept or next;
        my $buf;
        sysread $client, $buf, 4096;
        syswrite $client, $reply;
        1 while sysread $client, $buf, 4096;
        push @served, $client;    # the bug: no close $client
    }
}

my @workers;
for (1 .. 4) {
    my $pid = fork // die "fork: $!\n";
    if ($pid == 0) { worker(); exit 0 }
    push @workers, $pid;
}
$SIG{TERM} = sub { kill 'TERM', @workers; exit 0 };
1 while wait != -1;
