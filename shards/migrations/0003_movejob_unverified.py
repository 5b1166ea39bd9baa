from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('shards', '0002_movejob'),
    ]

    operations = [
        migrations.AddField(
            model_name='movejob',
            name='flip_snapshot',
            field=models.TextField(blank=True, default=''),
        ),
        migrations.AlterField(
            model_name='movejob',
            name='state',
            field=models.CharField(choices=[('pending', 'pending'), ('copying', 'copying'), ('catching_up', 'catching up'), ('cutover', 'cutover'), ('flipped', 'flipped'), ('cleanup', 'cleanup'), ('done', 'done'), ('aborted', 'aborted'), ('failed', 'failed'), ('unverified', 'unverified')], default='pending', max_length=16),
        ),
        migrations.RemoveConstraint(
            model_name='movejob',
            name='shards_one_active_move_per_tenant',
        ),
        migrations.AddConstraint(
            model_name='movejob',
            constraint=models.UniqueConstraint(condition=models.Q(('state__in', ['pending', 'copying', 'catching_up', 'cutover', 'flipped', 'cleanup', 'unverified'])), fields=('tenant',), name='shards_one_active_move_per_tenant'),
        ),
    ]
