# DBD::Pg (DBI): server-side prepared statements with placeholders (pg_server_prepare, the default),
# a bytea parameter, transactions with begin_work/rollback, errors ($dbh->state), a 1 MiB parameter,
# an SQL cursor (DECLARE/FETCH) failing mid-way and at once, statement handles finished and freed
# (their DEALLOCATE) then more queries.
# Usage: perl dbd_pg.pl HOST PORT USER DBNAME [STEP...]; prints `STEP JSON` lines, then `done`.
use strict;
use warnings;
use utf8;
use DBI;
use DBD::Pg qw(:pg_types);
use Digest::SHA qw(sha256_hex);
use JSON::PP;

binmode STDOUT, ':encoding(UTF-8)';
$| = 1;
my ($host, $port, $user, $dbname, @only) = @ARGV;
@only = qw(params rows transaction error big_param failed_cursor close) unless @only;
my $dbh = DBI->connect("dbi:Pg:host=$host;port=$port;dbname=$dbname", $user, '',
                       {RaiseError => 1, PrintError => 0, AutoCommit => 1, pg_enable_utf8 => 1});
my $json = JSON::PP->new->canonical->utf8(0);

sub emit { my ($step, $value) = @_; print "$step ", $json->encode($value), "\n"; }
sub state { my $msg = $dbh->errstr; $msg =~ s/^ERROR:\s+//; $msg =~ s/\n.*//s; return [$dbh->state, $msg]; }
sub value { my ($sql, @params) = @_; return ($dbh->selectrow_array($sql, undef, @params))[0]; }

my %steps = (
  params => sub {
    my $sth = $dbh->prepare('select $1::int4 + 1 as i, $2::text as t, $3::numeric as n, $4::bool as b,'
                            . ' $5::date as d, $6::float8 as f, $7::bytea as by, $8::text as nul, $9::int8 as big');
    my @values = (41, 'héllo wörld', '1.50', 1, '2024-02-29', 0.25, "\x00\x01\xff", undef, '9007199254740993');
    for my $i (0 .. $#values) {
      $sth->bind_param($i + 1, $values[$i], $i == 6 ? {pg_type => PG_BYTEA} : undef);
    }
    $sth->execute;
    my $row = $sth->fetchrow_arrayref;
    my @row = map { defined $_ ? "$_" : undef } @$row;
    $row[6] = unpack('H*', $row->[6]);
    emit('params', {rows => [\@row], types => $sth->{pg_type}, names => $sth->{NAME}, rows_affected => $sth->rows});
    $sth->finish;
  },
  rows => sub {
    my $rows = $dbh->selectall_arrayref('select g, md5(g::text) as m from generate_series(1, $1::int) g', undef, 20000);
    my $sum = 0;
    $sum += $_->[0] for @$rows;
    emit('rows', {count => scalar @$rows, sum => $sum, sha256 => sha256_hex(join("\n", map { $_->[1] } @$rows))});
  },
  transaction => sub {
    $dbh->do('create temp table drivers_t (id int primary key, v text)');
    $dbh->begin_work;
    my $ins = $dbh->prepare('insert into drivers_t values ($1, $2)');
    $ins->execute($_, "v$_") for 0 .. 2;
    my $inside = value('select count(*) from drivers_t');
    $dbh->rollback;
    emit('transaction', {inside => $inside, after_rollback => value('select count(*) from drivers_t')});
  },
  error => sub {
    my @seen;
    eval { value('select 1 / $1::int', 0); 1 } or push @seen, state();
    $dbh->begin_work;
    for my $sql ('select 1 / $1::int', 'select $1::int') {
      eval { value($sql, 0); 1 } or push @seen, state();
    }
    $dbh->rollback;
    push @seen, value('select $1::text', 'still alive');
    emit('error', \@seen);
  },
  big_param => sub {
    my $big = 'x' x 1048576;
    my @got = $dbh->selectrow_array('select length($1::text), md5($1::text)', undef, $big);
    my $back = value(q{select repeat('y', $1::int)}, length $big);
    emit('big_param', {length => $got[0], md5 => $got[1], returned => length $back});
  },
  failed_cursor => sub {
    my @seen;
    for my $sql ('select 1 / (5000 - g) as v from generate_series(1, 10000) g', 'select * from drivers_no_such_table') {
      my $n = 0;
      $dbh->begin_work;
      my $ok = eval {
        $dbh->do("declare drivers_c cursor for $sql");
        my $fetch = $dbh->prepare('fetch 100 from drivers_c');
        while (1) {
          $fetch->execute;
          my $rows = $fetch->fetchall_arrayref;
          last unless @$rows;
          $n += @$rows;
        }
        1;
      };
      push @seen, [$n, $ok ? undef : state()];
      $dbh->rollback;
      push @seen, value('select $1::text', 'after the cursor');
    }
    emit('failed_cursor', \@seen);
  },
  close => sub {
    my @seen;
    my $sth = $dbh->prepare('select $1::int * 2');
    for my $i (0 .. 2) { $sth->execute($i); push @seen, ($sth->fetchrow_array)[0]; }
    $sth->finish;
    push @seen, value('select count(*) from pg_prepared_statements where statement = $1', 'select $1::int * 2');
    undef $sth; # DBD::Pg deallocates its server-side statement
    push @seen, value('select count(*) from pg_prepared_statements where statement = $1', 'select $1::int * 2');
    push @seen, value('select $1::text', 'after the close');
    emit('close', \@seen);
  },
);
$steps{$_}->() for @only;
print "done\n";
$dbh->disconnect;
