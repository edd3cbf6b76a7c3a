# A prefork server: the parent listens and forks 4 workers; each worker accepts one connection at
# a time, replies, reads to EOF and closes. Clean, but it serves at most 4 clients at once: the
# others wait in the accept queue until a worker is free.
# Run: perl prefork.pl PORT
use strict;
use warnings;
use IO::Socket::INET;

my $port = $ARGV[0] // $ENV{PORT};
my $srv = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 1024, ReuseAddr => 1,
) or die "listen: $@\n";
my $reply = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

sub worker {
    while (1) {
        my $client = $srv->accept or next;
        my $buf;
        sysread $client, $buf, 4096;
        syswrite $client, $reply;
        1 while sysread $client, $buf, 4096;
        close $client;
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
